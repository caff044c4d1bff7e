chmod 0600 a
chmod 0755 b
chmod 4755 c
chmod 0711 d
