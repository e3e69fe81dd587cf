import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { FUSEBOX_VERSION } from '../../src/version.js';
import { DEFAULT_INJECT_OPTIONS } from '../../src/deploy/options.js';

const ROOT = join(import.meta.dirname, '../..');

interface Step {
  name?: string;
  id?: string;
  uses?: string;
  if?: string;
  run?: string;
  env?: Record<string, string>;
  with?: Record<string, unknown>;
}
interface Workflow {
  on: Record<string, unknown>;
  permissions: Record<string, string>;
  env: { IMAGE: string };
  jobs: Record<string, { steps: Step[] }>;
}

const workflow = parse(readFileSync(join(ROOT, 'deploy/ci/image.yaml'), 'utf8')) as Workflow;
const steps = Object.values(workflow.jobs).flatMap((j) => j.steps);
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };

describe('deploy/ci/image.yaml', () => {
  it('pushes exactly the image fusebox inject puts in the sidecar by default: IMAGE:<package.json version>', () => {
    expect(`${workflow.env.IMAGE}:${pkg.version}`).toBe(DEFAULT_INJECT_OPTIONS.image);
    // The version the workflow tags with is read from package.json, and the CLI in the image must say the same.
    const version = steps.find((s) => s.id === 'version');
    expect(version?.run).toContain(`require('./package.json').version`);
    expect(FUSEBOX_VERSION).toBe(pkg.version);
    const build = steps.find((s) => s.uses?.startsWith('docker/build-push-action@'));
    expect(build?.with?.tags).toBe('${{ env.IMAGE }}:${{ steps.version.outputs.version }}');
    const push = steps.find((s) => s.name === 'Push');
    expect(push).toMatchObject({ run: 'docker push "$IMAGE:$VERSION"', env: { VERSION: '${{ steps.version.outputs.version }}' } });
  });

  it('refuses a release tag that is not the package version, and pushes only outside pull requests', () => {
    expect(workflow.on.push).toEqual({ tags: ['v*'] });
    expect(steps.find((s) => s.id === 'version')?.run).toMatch(/GITHUB_REF_NAME" != "v\$version"[\s\S]*exit 1/);
    for (const s of steps.filter((x) => x.name === 'Push' || x.uses?.startsWith('docker/login-action@'))) expect(s.if, s.name).toBe("github.event_name != 'pull_request'");
    expect(workflow.permissions).toEqual({ contents: 'read', packages: 'write' });
  });
});
