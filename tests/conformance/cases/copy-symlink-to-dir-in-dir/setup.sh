ln -s real d/alias
