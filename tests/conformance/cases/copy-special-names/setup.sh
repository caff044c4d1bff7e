printf 'u' > 'ünï cødé'
printf 'q' > 'with"quote'
mkdir 'dir with spaces'
printf 's' > 'dir with spaces/file name'
