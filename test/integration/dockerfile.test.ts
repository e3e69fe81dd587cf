// No Docker engine runs on the development machines, so this test checks what can be checked of the Dockerfile
// without one: its instructions against the repository, then the image build replayed in temp dirs (one per
// stage, each standing for that stage's `/`) and the image's ENTRYPOINT + CMD run from the production stage.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, posix, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parseDocument } from 'yaml';
import { loadConfigFile, parseConfig } from '../../src/config/load.js';
import { freePort } from '../helpers/net.js';

const REPO = resolve(import.meta.dirname, '../..');
const run = promisify(execFile);

// ---- A tiny Dockerfile parser: enough for the instructions our Dockerfile uses. ----

interface Instruction {
  keyword: string;
  /** Leading `--name=value` options (COPY --from, HEALTHCHECK --interval...). */
  flags: Record<string, string>;
  /** The rest after the flags, as written (shell form). */
  text: string;
  /** The JSON-array (exec) form, when the rest is one. */
  exec?: string[];
}

interface Stage {
  index: number;
  image: string;
  name?: string;
  instructions: Instruction[];
}

const parseInstruction = (line: string): Instruction => {
  const m = /^(\S+)\s*(.*)$/s.exec(line)!;
  let rest = m[2]!;
  const flags: Record<string, string> = {};
  for (let f = /^--([\w-]+)=(\S+)\s*/.exec(rest); f; f = /^--([\w-]+)=(\S+)\s*/.exec(rest)) {
    flags[f[1]!] = f[2]!;
    rest = rest.slice(f[0].length);
  }
  return { keyword: m[1]!.toUpperCase(), flags, text: rest, ...(rest.startsWith('[') ? { exec: JSON.parse(rest) as string[] } : {}) };
};

const parseDockerfile = (text: string): Stage[] => {
  const lines: string[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    // Docker drops comment lines, even inside a `\` continuation.
    if (/^\s*#/.test(raw) || raw.trim() === '') continue;
    const cont = /\\\s*$/.test(raw);
    pending += `${cont ? raw.replace(/\\\s*$/, '') : raw} `;
    if (!cont) {
      lines.push(pending.trim());
      pending = '';
    }
  }
  const stages: Stage[] = [];
  for (const ins of lines.map(parseInstruction)) {
    if (ins.keyword === 'FROM') {
      const [image, as, name] = ins.text.split(/\s+/);
      stages.push({ index: stages.length, image: image!, ...(as?.toUpperCase() === 'AS' ? { name: name! } : {}), instructions: [] });
    } else {
      if (stages.length === 0) throw new Error(`${ins.keyword} before the first FROM`);
      stages.at(-1)!.instructions.push(ins);
    }
  }
  return stages;
};

/** COPY's sources and destination, from either form. */
const copyArgs = (ins: Instruction): { sources: string[]; dest: string } => {
  const all = ins.exec ?? ins.text.split(/\s+/);
  return { sources: all.slice(0, -1), dest: all.at(-1)! };
};

const stageOf = (stages: Stage[], ref: string): Stage | undefined => stages.find((s) => s.name === ref || String(s.index) === ref);

// ---- .dockerignore, Docker's way: a path is out if the last pattern matching it or one of its parents is not a `!`. ----

const globToRegExp = (glob: string): RegExp => {
  const g = posix.normalize(glob.replace(/^\/+/, ''));
  let re = '';
  for (let i = 0; i < g.length; i++) {
    const c = g[i]!;
    if (c === '*' && g[i + 1] === '*') {
      re += g[i + 2] === '/' ? '(?:.*/)?' : '.*';
      i += g[i + 2] === '/' ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
};

const dockerignore = (text: string): ((path: string) => boolean) => {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => ({ negate: l.startsWith('!'), re: globToRegExp(l.replace(/^!/, '')) }));
  return (path) => {
    const parts = posix.normalize(path).split('/');
    const candidates = parts.map((_p, i) => parts.slice(0, i + 1).join('/'));
    let ignored = false;
    for (const rule of rules) if (candidates.some((c) => rule.re.test(c))) ignored = !rule.negate;
    return ignored;
  };
};

// ---- What the Dockerfile says, read once. ----

const stages = parseDockerfile(readFileSync(join(REPO, 'Dockerfile'), 'utf8'));
const finalStage = stages.at(-1)!;
const isIgnored = dockerignore(existsSync(join(REPO, '.dockerignore')) ? readFileSync(join(REPO, '.dockerignore'), 'utf8') : '');
const lastOf = (stage: Stage, keyword: string): Instruction | undefined => stage.instructions.filter((i) => i.keyword === keyword).at(-1);

/** The listen ports the schema gives a config that does not set them. */
const schemaDefaults = parseConfig({ routes: [{ name: 'r', match: { pathPrefix: '/r' }, upstream: { url: 'http://127.0.0.1:9' } }] }, 'defaults', {}).listen;

/** HEALTHCHECK's exec form and the one URL its command fetches. */
const healthcheck = () => {
  const hc = lastOf(finalStage, 'HEALTHCHECK');
  if (!hc) throw new Error('the final stage has no HEALTHCHECK');
  const cmd = parseInstruction(hc.text);
  expect(cmd.keyword).toBe('CMD');
  expect(cmd.exec, 'HEALTHCHECK CMD in exec form: the image need not have a shell').toBeDefined();
  const urls = cmd.exec!.join(' ').match(/https?:\/\/[^\s'"`)]+/g) ?? [];
  expect(urls).toHaveLength(1);
  return { exec: cmd.exec!, raw: urls[0]!, url: new URL(urls[0]!) };
};

describe('Dockerfile, read', () => {
  it('builds on Node 24 images only, and every COPY --from names an earlier stage', () => {
    expect(stages.length).toBeGreaterThan(1);
    for (const s of stages) {
      if (stageOf(stages.slice(0, s.index), s.image)) continue;
      expect(s.image, `stage ${s.index}`).toMatch(/^node:24-[\w.-]+$/);
    }
    const froms = stages.flatMap((s) => s.instructions.filter((i) => i.keyword === 'COPY' && i.flags.from !== undefined).map((i) => ({ s, from: i.flags.from! })));
    expect(froms.length).toBeGreaterThan(0);
    for (const { s, from } of froms) {
      const source = stageOf(stages, from);
      expect(source, `COPY --from=${from} in stage ${s.index}`).toBeDefined();
      expect(source!.index).toBeLessThan(s.index);
    }
  });

  it('copies from the build context only paths that exist and that .dockerignore keeps', () => {
    const sources = stages.flatMap((s) => s.instructions.filter((i) => i.keyword === 'COPY' && i.flags.from === undefined).flatMap((i) => copyArgs(i).sources));
    expect(sources).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'src', 'config', 'ui']));
    for (const src of sources) {
      expect(src, 'globs are not supported by this test').not.toMatch(/[*?[]/);
      expect(existsSync(join(REPO, src)), `${src} exists`).toBe(true);
      expect(isIgnored(src), `${src} is excluded by .dockerignore`).toBe(false);
    }
    // A local node_modules or dist in the context would be sent to the daemon and could shadow the build's own.
    expect(isIgnored('node_modules')).toBe(true);
    expect(isIgnored('dist')).toBe(true);
  });

  it('runs the final stage as a numeric non-root user', () => {
    const user = lastOf(finalStage, 'USER');
    expect(user, 'the final stage sets USER').toBeDefined();
    // Numeric, so the kubelet can enforce `runAsNonRoot: true` without a runAsUser; a name fails the pod with
    // "image has non-numeric user, cannot verify user is non-root".
    const [uid, gid] = user!.text.split(':');
    expect(uid).toMatch(/^\d+$/);
    expect(Number(uid)).not.toBe(0);
    if (gid !== undefined) expect(Number(gid)).not.toBe(0);
  });

  it('exposes the default proxy and admin ports of the config schema, which the example config uses too', () => {
    const exposed = finalStage.instructions.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.text.split(/\s+/).map((p) => Number(p.replace(/\/tcp$/, ''))));
    expect(exposed.sort()).toEqual([schemaDefaults.proxy.port, schemaDefaults.admin.port].sort());
    const example = loadConfigFile(join(REPO, 'config/example.yaml'), {}).config.listen;
    expect([example.proxy.port, example.admin.port]).toEqual([schemaDefaults.proxy.port, schemaDefaults.admin.port]);
  });

  it('has a HEALTHCHECK fetching /healthz on the admin port over loopback', () => {
    const { exec, url } = healthcheck();
    expect(exec[0]).toBe('node');
    expect(url.pathname).toBe('/healthz');
    expect(Number(url.port)).toBe(schemaDefaults.admin.port);
    expect(['127.0.0.1', 'localhost', '[::1]']).toContain(url.hostname);
  });

  it('starts the package.json bin, the file tsconfig.build.json emits for src/main.ts', () => {
    const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    const entry = lastOf(finalStage, 'ENTRYPOINT')?.exec;
    expect(entry, 'ENTRYPOINT in exec form').toBeDefined();
    expect(entry!.slice(0, 2)).toEqual(['node', pkg.bin.fusebox]);
  });
});

// ---- The build, replayed without Docker. ----

/**
 * RUN commands this replay knows to be safe on the host (they only touch the stage's working dir). Anything else
 * fails the test rather than run as root on this machine. `npm cache clean` only trims the image; here it would
 * empty the developer's npm cache, so it is skipped.
 */
const RUN_ALLOWED = [/^npm ci( --[\w=-]+)*$/, /^npx tsc -p [\w.-]+$/];
const RUN_SKIPPED = [/^npm cache clean --force$/];

/** PATH without any node_modules/.bin (a build must not borrow the repo's tools), Node 24 of this process first. */
const cleanPath = (): string =>
  [dirname(process.execPath), ...(process.env.PATH ?? '').split(delimiter).filter((p) => p !== '' && !p.includes('node_modules'))].join(delimiter);

/**
 * What npm needs from this machine to reach its cache and registry (proxies, an extra CA where TLS is intercepted:
 * without it npm retries for minutes), and nothing of the test run (NODE_ENV=test, NODE_OPTIONS...).
 */
const hostEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(
    Object.entries(process.env).filter(([k]) =>
      /^(HOME|TMPDIR|https?_proxy|no_proxy|NODE_EXTRA_CA_CERTS|SSL_CERT_(FILE|DIR)|npm_config_(cache|registry|userconfig|cafile|ca|strict_ssl|proxy|https_proxy|noproxy))$/i.test(k),
    ),
  );

interface Built {
  /** Stage index → temp dir standing for that stage's `/`. */
  roots: string[];
  workdir: string[];
  env: Array<Record<string, string>>;
}

const replay = async (base: string): Promise<Built> => {
  const built: Built = { roots: [], workdir: [], env: [] };
  for (const stage of stages) {
    const root = join(base, `stage${stage.index}${stage.name ? `-${stage.name}` : ''}`);
    mkdirSync(root);
    let workdir = '/';
    const env: Record<string, string> = {};
    const here = (p: string) => join(root, posix.resolve(workdir, p));
    for (const ins of stage.instructions) {
      if (ins.keyword === 'WORKDIR') {
        workdir = posix.resolve(workdir, ins.text);
        mkdirSync(here('.'), { recursive: true });
      } else if (ins.keyword === 'ENV') {
        for (const m of ins.text.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
      } else if (ins.keyword === 'COPY') {
        const { sources, dest } = copyArgs(ins);
        const from = ins.flags.from === undefined ? undefined : stageOf(stages, ins.flags.from)!;
        const intoDir = sources.length > 1 || dest.endsWith('/');
        for (const src of sources) {
          const abs = from ? join(built.roots[from.index]!, posix.resolve(built.workdir[from.index]!, src)) : join(REPO, src);
          const target = intoDir ? join(here(dest), posix.basename(src)) : here(dest);
          mkdirSync(dirname(target), { recursive: true });
          // The build context is the repo minus .dockerignore.
          cpSync(abs, target, { recursive: true, filter: (p) => from !== undefined || !isIgnored(relative(REPO, p) || '.') });
        }
      } else if (ins.keyword === 'RUN') {
        for (const cmd of ins.text.split('&&').map((c) => c.trim())) {
          if (RUN_SKIPPED.some((re) => re.test(cmd))) continue;
          if (!RUN_ALLOWED.some((re) => re.test(cmd))) throw new Error(`RUN ${cmd}: this test does not know it is safe to run on the host; teach RUN_ALLOWED`);
          await run('sh', ['-c', cmd], { cwd: here('.'), env: { ...hostEnv(), PATH: cleanPath(), ...env }, timeout: 200_000, maxBuffer: 64 << 20 });
        }
      }
    }
    built.roots.push(root);
    built.workdir.push(workdir);
    built.env.push(env);
  }
  return built;
};

const exited = (child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> =>
  new Promise((resolveExit) => {
    if (child.exitCode !== null || child.signalCode !== null) resolveExit({ code: child.exitCode, signal: child.signalCode });
    else child.once('exit', (code, signal) => resolveExit({ code, signal }));
  });

describe('the image, built and started without Docker', () => {
  let base: string;
  let built: Built;
  let app: string;
  let child: ChildProcess | undefined;

  beforeAll(async () => {
    base = realpathSync(mkdtempSync(join(tmpdir(), 'fusebox-image-')));
    built = await replay(base);
    app = join(built.roots.at(-1)!, built.workdir.at(-1)!);
  }, 240_000);

  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited(child);
    }
    if (base) rmSync(base, { recursive: true, force: true });
    // Removing the replayed image (two node_modules trees) took over 30 s once on a loaded 2-core machine.
  }, 180_000);

  it('ships dist/ and production dependencies only', () => {
    const pkg = JSON.parse(readFileSync(join(app, 'package.json'), 'utf8')) as {
      bin: { fusebox: string };
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    expect(existsSync(join(app, 'dist/src/main.js'))).toBe(true);
    // `npm install -g` / `npx fusebox` run the bin: it must be the built CLI, executable by its shebang.
    expect(pkg.bin.fusebox).toBe('dist/src/main.js');
    expect(readFileSync(join(app, pkg.bin.fusebox), 'utf8')).toMatch(/^#!\/usr\/bin\/env node\n/);
    expect(existsSync(join(app, 'src')), 'TypeScript sources stay in the build stage').toBe(false);
    const nm = join(app, 'node_modules');
    for (const dep of Object.keys(pkg.dependencies)) expect(existsSync(join(nm, dep)), `dependency ${dep}`).toBe(true);
    expect(Object.keys(pkg.devDependencies)).toEqual(expect.arrayContaining(['vitest', 'typescript', 'tsx']));
    const leaked = Object.keys(pkg.devDependencies).filter((dev) => existsSync(join(nm, dev)));
    expect(leaked, 'dev dependencies in the production node_modules').toEqual([]);
    expect(readdirSync(join(nm, '.bin')).filter((b) => ['tsc', 'tsx', 'vitest', 'eslint', 'node'].includes(b))).toEqual([]);
  });

  it('runs ENTRYPOINT + CMD: healthy, ready, metrics, HEALTHCHECK passes, exits 0 on SIGTERM', async () => {
    const entry = lastOf(finalStage, 'ENTRYPOINT')!.exec!;
    const cmd = lastOf(finalStage, 'CMD')!.exec!;
    const workdir = built.workdir.at(-1)!;
    expect(entry[0]).toBe('node');
    // Absolute paths in the command are paths in the image: root them in the final stage's dir.
    const args = [...entry.slice(1), ...cmd].map((a) => (a.startsWith(`${workdir}/`) ? join(built.roots.at(-1)!, a) : a));
    const configFile = args[args.indexOf('--config') + 1]!;
    expect(configFile.startsWith(app)).toBe(true);

    // Listen ports are plain numbers in the config (no env expansion, no CLI flag): the copied config is rewritten
    // with two free ports and nothing else changed, so the command line stays the image's.
    const [proxyPort, adminPort] = [await freePort(), await freePort()];
    const original = readFileSync(configFile, 'utf8');
    const doc = parseDocument(original);
    doc.setIn(['listen', 'proxy', 'port'], proxyPort);
    doc.setIn(['listen', 'admin', 'port'], adminPort);
    writeFileSync(configFile, doc.toString());
    const before = parseDocument(original).toJS() as { listen: { proxy: { port: number }; admin: { port: number } } };
    before.listen.proxy.port = proxyPort;
    before.listen.admin.port = adminPort;
    expect(parseDocument(readFileSync(configFile, 'utf8')).toJS()).toEqual(before);

    // Node resolves packages up the tree: no node_modules above the stage may stand in for a missing dependency.
    for (let d = app; d !== dirname(d); ) {
      d = dirname(d);
      expect(existsSync(join(d, 'node_modules')), d).toBe(false);
    }

    const imageEnv = built.env.at(-1)!;
    expect(imageEnv.NODE_ENV).toBe('production');
    // The heap as Node sizes it under inject's limit, whatever the limit (the Dockerfile says why, with figures).
    expect(imageEnv.NODE_OPTIONS).toBe('--max-old-space-size=256 --max-semi-space-size=4');
    expect(imageEnv.MALLOC_ARENA_MAX).toBe('2');
    expect(process.versions.node.split('.')[0], 'the test runs the image command on Node 24, like the base image').toBe('24');
    child = spawn(process.execPath, args, { cwd: app, env: { PATH: cleanPath(), ...imageEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    const done = exited(child);

    const admin = `http://127.0.0.1:${adminPort}`;
    const deadline = Date.now() + 60_000;
    let healthz: Response | undefined;
    while (child.exitCode === null && Date.now() < deadline) {
      healthz = await fetch(`${admin}/healthz`).catch(() => undefined);
      if (healthz?.ok) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(healthz?.status, output).toBe(200);
    // The admin port answers a moment before the start line is written (listen() logs once both ports are bound).
    await vi.waitFor(() => expect(output).toContain('fusebox listening'), { timeout: 30_000, interval: 50 });
    expect((await fetch(`${admin}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${admin}/metrics`)).text();
    expect(metrics).toMatch(/^# TYPE fusebox_requests_total counter$/m);
    expect(metrics).toMatch(/^fusebox_\w+(\{[^}]*\})? \d/m);
    const proxied = await fetch(`http://127.0.0.1:${proxyPort}/no-such-route`);
    expect(proxied.headers.get('x-fusebox-error')).toBe('NO_ROUTE');
    // The live page's files ship in the image (ui/, beside config/).
    for (const path of ['/', '/ui.js', '/ui.css']) expect((await fetch(`${admin}${path}`)).status, `GET ${path}`).toBe(200);

    // The HEALTHCHECK command itself, pointed at this run's admin port.
    const { exec, raw, url } = healthcheck();
    url.port = String(adminPort);
    const probe = exec.slice(1).map((a) => a.replace(raw, url.href));
    const healthcheckRun = () => run(process.execPath, probe, { env: { PATH: cleanPath(), ...imageEnv }, timeout: 10_000 }).then(() => 0, (e: { code?: number }) => e.code ?? -1);
    expect(await healthcheckRun()).toBe(0);

    child.kill('SIGTERM');
    const { code, signal } = await done;
    expect({ code, signal }, output).toEqual({ code: 0, signal: null });
    expect(output).toContain('"msg":"stopped"');
    expect(await healthcheckRun(), 'HEALTHCHECK fails once Fusebox is gone').toBe(1);
  }, 120_000);
});
