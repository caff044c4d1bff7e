tar czf a.tgz top
rm -rf top
