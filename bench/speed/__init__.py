"""Speed: latency measurement (prefill, decode, per layer shape), the kernel backends, packers from dense
with zeros to the native formats, and `bench kernels`."""
