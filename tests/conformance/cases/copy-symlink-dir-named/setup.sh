ln -s real alias
