python3 -c "import os; os.setxattr('a', 'user.color', b'blue'); os.setxattr('d', 'user.kind', b'dir')"
