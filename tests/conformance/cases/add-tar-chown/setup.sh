tar cf a.tar src
rm -rf src
