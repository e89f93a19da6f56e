// runtime/train/stop-signals.ts in a process of its own, so a test can signal it: prints "ready",
// then "aborted <signal>" when the stop signal aborts; it stays up until a signal ends it.
require('./register-ts');

const { stopOnSignals } = require('../../runtime/train/stop-signals.ts');

const stop = stopOnSignals();
stop.signal.addEventListener('abort', () => process.stdout.write(`aborted ${stop.signal.reason}\n`));
process.stdout.write('ready\n');
setInterval(() => {}, 1000);
