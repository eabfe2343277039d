"""Images: safe decoding of untrusted files and the torch-free CPU half of preprocessing."""
