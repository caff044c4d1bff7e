mkdir empty
chmod 0701 empty
