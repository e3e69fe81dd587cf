import type { SloKind } from '../slo/burn.js';
import type { SloEventCounters } from '../slo/recorder.js';
import { counterSeries, type CounterSeries } from './fast-metrics.js';
import type { Metrics } from './metrics.js';

type GoodBad = Record<'good' | 'bad', CounterSeries>;

/**
 * The SLO recorder's local counters (`fusebox_slo_events_total`, `fusebox_slo_refused_total`) as fast series,
 * found per call by route, SLO and kind through plain lookups: the recorder counts 2–3 events a call.
 */
export const sloEventCounters = (m: Metrics): Required<SloEventCounters> => {
  const events = new Map<string, Record<SloKind, GoodBad>>();
  const refused = new Map<string, CounterSeries>();
  const goodBad = (route: string, slo: SloKind): GoodBad => ({
    good: counterSeries(m.sloEvents, route, slo, 'good'),
    bad: counterSeries(m.sloEvents, route, slo, 'bad'),
  });
  return {
    events: {
      inc: ({ route, slo, kind }, by) => {
        let r = events.get(route);
        if (r === undefined) events.set(route, (r = { availability: goodBad(route, 'availability'), latency: goodBad(route, 'latency'), cost: goodBad(route, 'cost') }));
        r[slo][kind].inc(by);
      },
    },
    refused: {
      inc: ({ route }, by) => {
        let r = refused.get(route);
        if (r === undefined) refused.set(route, (r = counterSeries(m.sloRefused, route)));
        r.inc(by);
      },
    },
  };
};
