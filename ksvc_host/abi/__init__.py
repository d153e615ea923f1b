"""Binary facts: the KSVC channel ABI, x86-64 syscall numbers, io_uring's ABI."""
