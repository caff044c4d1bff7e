ln -s f d/link
