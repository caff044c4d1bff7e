tar czf a.tar.gz src
rm -rf src
