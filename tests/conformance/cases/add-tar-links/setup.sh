ln src/f src/hard
ln -s f src/soft
tar cf l.tar src
rm -rf src
