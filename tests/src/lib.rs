//! The end-to-end tests are in `tests/`; they run a real `kmsd` through `kms-testkit`
//! (`testing/kit`). This library is empty: it exists so the package has a target besides its
//! tests and the `swtpm-lab` tool.
