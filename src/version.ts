/**
 * Fusebox's release: what `fusebox --version` prints, the default image tag `fusebox inject` writes and its
 * `fusebox.io/injected` annotation. A constant, not a read of package.json at run time, so the compiled CLI needs no
 * file beside it; a test keeps it equal to package.json's version.
 */
export const FUSEBOX_VERSION = '0.1.0';
