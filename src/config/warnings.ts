import type { Config, RouteConfig } from './schema.js';

/** What a `tunnel`-mode route has that its spliced tunnels escape. Empty when nothing is lost. */
const lostInTunnel = (route: RouteConfig, config: Config): string[] => {
  const lost: string[] = [];
  if (route.credential !== undefined) lost.push(`credential (${route.credential.env})`);
  if (route.provider !== 'none') lost.push(`${route.provider} usage metering and cost`);
  const b = route.budget;
  if (b.maxRequestUsd !== undefined || b.maxRequestTokens !== undefined || b.dailyUsd !== undefined) lost.push('route caps (budget)');
  const g = config.budgets;
  if (g.agent.dailyUsd !== undefined || g.agent.monthlyUsd !== undefined || g.agent.dailyTokens !== undefined) lost.push('agent caps');
  if (g.workflow.usd !== undefined || g.workflow.tokens !== undefined || g.workflow.maxCalls !== undefined) lost.push('workflow caps');
  if (g.fleet.dailyUsd !== undefined) lost.push('the fleet cap');
  return lost;
};

/**
 * A config can be valid and still not do what its author expects. Each line says what and what to do; startup logs
 * them and `fusebox check-config` prints them (exit 0: they are choices, not mistakes).
 */
export const configWarnings = (config: Config): string[] => {
  const warnings: string[] = [];
  config.routes.forEach((route, i) => {
    if (route.match.connect !== 'tunnel' || (route.match.hosts ?? []).length === 0) return;
    const lost = lostInTunnel(route, config);
    if (lost.length === 0) return;
    warnings.push(
      `routes[${i}] (name "${route.name}"): match.connect is tunnel, so CONNECT tunnels to ${route.match.hosts!.join(', ')} are spliced end to end ` +
        `and bypass its ${lost.join(', ')}; retries and breakers do not apply either. Use match.connect: intercept (the default) ` +
        `unless the client pins certificates or needs mutual TLS to the destination; base-URL calls on this route keep every policy.`,
    );
  });
  return warnings;
};
