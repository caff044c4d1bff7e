tar --owner=1000 --group=3000 -cf a.tar src
rm -rf src
