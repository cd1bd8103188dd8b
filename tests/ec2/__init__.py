"""The EC2 suite: a fake cloud of moto and network namespaces; run it with tests/ec2/run."""
