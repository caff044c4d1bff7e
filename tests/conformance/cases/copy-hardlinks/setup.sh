ln dir/a dir/b
