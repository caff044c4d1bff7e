chmod 2755 d
chmod 1777 d
