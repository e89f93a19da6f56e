// Stands in for the CLI under cli/allocator.ts's rerun, in two roles (argv: <role> <mode> <report>):
// - 'parent': runs rerunWithAllocatorSettings on itself as `hollowc train` would and exits as it says;
// - 'train' (the rerun child): writes its pid to <report>, then waits; with mode 'handles' it ends
//   with exit code 3 on SIGTERM, writing the signal to <report>.signal; with 'default' a SIGTERM
//   ends it by the signal.
require('./register-ts');

const fs = require('fs');
const { rerunWithAllocatorSettings } = require('../../cli/allocator.ts');

const [role, mode, report] = process.argv.slice(2);
if (role === 'parent') {
  const rerun = rerunWithAllocatorSettings([process.argv[0], __filename, 'train', mode, report]);
  if (!rerun) throw new Error('expected a rerun');
  rerun.then((code) => (process.exitCode = code ?? 99));
} else {
  if (rerunWithAllocatorSettings(process.argv) !== undefined) throw new Error('the child reran itself');
  if (mode === 'handles')
    process.on('SIGTERM', (signal) => {
      fs.writeFileSync(`${report}.signal`, signal);
      process.exit(3);
    });
  fs.writeFileSync(report, String(process.pid));
  setInterval(() => {}, 1000);
}
