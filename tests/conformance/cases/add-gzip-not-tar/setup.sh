printf 'plain text\n' | gzip -n > data.gz
