import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
/** V8's gc(), from a context made after the flag (this process was not started with --expose-gc). */
export const gc = runInNewContext('gc') as () => void;
