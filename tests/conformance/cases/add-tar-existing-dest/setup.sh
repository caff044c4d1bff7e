tar cf a.tar new.conf
rm new.conf
