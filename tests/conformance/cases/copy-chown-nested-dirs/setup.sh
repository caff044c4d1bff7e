chmod 0700 tree/a
