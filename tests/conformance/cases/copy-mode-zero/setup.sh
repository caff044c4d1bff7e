chmod 0000 locked
