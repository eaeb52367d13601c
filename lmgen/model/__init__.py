"""The network: ``Decoder`` (every family from its config), attention, linear layers and
llama.cpp's block formats, and the native kernels (C, built with the package) with the threads
they compute on. Knows nothing of file formats."""
