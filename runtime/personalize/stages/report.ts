/** report: run/loss.svg and run/report.html, on every run (cheap, and it shows this run's stages). */
import { LOSS_SVG, REPORT_FILE } from '../run-folder';
import { prepareReport } from '../run-report';
import { Stage } from '../stage-runner';
import { StageContext, manifestOf } from './context';

export function reportStage(ctx: StageContext): Stage {
  return {
    name: 'report',
    key: '',
    always: true,
    valid: () => false,
    clean: () => {},
    run: async (_resuming, _record, soFar) => {
      const report = await prepareReport(ctx.s, ctx.dirs, manifestOf(ctx), ctx.findings);
      const summary = `${LOSS_SVG} and ${REPORT_FILE}`;
      // its own row without a time: the page is written once, while this stage runs
      report.write([...soFar.results, { name: 'report', status: 'ran', summary }], soFar.peakRssBytes);
      return { summary };
    },
  };
}
