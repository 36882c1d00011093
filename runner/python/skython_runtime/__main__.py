"""`python -m skython_runtime`: the zygote. This module runs as `__main__` and defines nothing,
so every class and global lives once, in the package's modules."""

from skython_runtime.zygote import main

main()
