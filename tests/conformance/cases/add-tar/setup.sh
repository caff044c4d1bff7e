chmod 0700 src/sub
tar cf a.tar src
rm -rf src
