ln -s ../../outside link
