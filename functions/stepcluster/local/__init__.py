"""Running the real definition on this machine: moto's Step Functions interpreter, the
project's own handlers behind a local Lambda endpoint, and the local cluster. Not used by the
deployed functions (moto is imported only here, lazily)."""
