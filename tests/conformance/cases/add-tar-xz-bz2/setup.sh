tar cJf a.tar.xz src
tar cjf b.tar.bz2 src
rm -rf src
