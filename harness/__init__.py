"""Process control shared by the benchmarks and the tests: start a server, wait, stop it."""
