printf 'FROM conformance-base:1\r\nENV A=1 \\\r\n  B=2\r\nCOPY a /a\r\n' > Dockerfile
printf 'x\n' > a
