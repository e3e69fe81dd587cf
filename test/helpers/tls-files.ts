import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A private CA, a server certificate for 127.0.0.1/localhost it signed, and a client certificate it signed: PEM files. */
export interface TestTlsFiles {
  readonly dir: string;
  readonly caFile: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
}

/** Made with the machine's openssl, in a new temporary folder (a private CA, as cert-manager would issue for an in-cluster Redis). */
export const makeTlsFiles = (): TestTlsFiles => {
  const dir = mkdtempSync(join(tmpdir(), 'fusebox-tls-'));
  const at = (name: string) => join(dir, name);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=fusebox test CA');
  const issue = (name: string, subject: string, ext?: string) => {
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    const args = ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2'];
    if (ext !== undefined) {
      writeFileSync(at(`${name}.ext`), ext);
      args.push('-extfile', `${name}.ext`);
    }
    ssl(...args);
  };
  issue('server', '/CN=localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  issue('client', '/CN=fusebox sidecar');
  return {
    dir,
    caFile: at('ca.pem'),
    serverCertFile: at('server.pem'),
    serverKeyFile: at('server.key'),
    clientCertFile: at('client.pem'),
    clientKeyFile: at('client.key'),
  };
};

/** `redis-server` arguments for a TLS port that asks clients for a certificate signed by the CA (Redis's default). */
export const redisTlsArgs = (files: TestTlsFiles, tlsPort: number): string[] => [
  '--tls-port',
  String(tlsPort),
  '--tls-cert-file',
  files.serverCertFile,
  '--tls-key-file',
  files.serverKeyFile,
  '--tls-ca-cert-file',
  files.caFile,
  '--tls-auth-clients',
  'yes',
];
