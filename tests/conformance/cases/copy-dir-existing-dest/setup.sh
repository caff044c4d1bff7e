chmod 0700 dir
