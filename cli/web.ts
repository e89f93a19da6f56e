/** `hollowc web`: serve the browser page with a compiled folder and its store. */
import { Command } from 'commander';
import { startWebServer } from '../runtime/web/server';
import { out, parsePort } from './options';

export function registerWeb(program: Command): void {
  program
    .command('web')
    .description('serve a page that trains the LoRA in the browser (onnxruntime-web, WebGPU or WASM) on a compiled folder and its store')
    .argument('<out>', 'a compiled folder with a precomputed store')
    .option('--port <n>', 'port (0: any free one)', parsePort, 8080)
    .option('--host <address>', 'address to listen on (127.0.0.1: this machine only)', '127.0.0.1')
    .option('--store <dir>', 'store folder (default <out>/store)')
    .option(
      '--model <pipeline>',
      'a pipeline folder: its vae_decoder/ is served so the page shows the sample decoded (else a latent preview), and its text encoder encodes "" as guidance\'s negative',
    )
    .option(
      '--prompt <text>',
      "what the page samples after training (default: the store's instance prompt); --model's text encoder encodes it when the server starts",
    )
    .action(async (dir: string, o: { port: number; host: string; store?: string; model?: string; prompt?: string }) => {
      const server = await startWebServer({
        out: dir,
        port: o.port,
        host: o.host,
        storeDir: o.store,
        model: o.model,
        prompt: o.prompt,
        warn: (line) => process.stderr.write(`hollowc: warning: ${line}\n`),
      });
      if (!['127.0.0.1', 'localhost', '::1'].includes(o.host))
        process.stderr.write(`hollowc: warning: listening on ${o.host}: other machines can fetch the folder's weights and store\n`);
      out(`serving ${dir} at ${server.url}  (the page trains in the browser; Ctrl-C stops the server)`);
      if (o.model) out(`  the sample is decoded with ${o.model}/vae_decoder in the page`);
      if (o.prompt !== undefined) out(`  the page samples "${o.prompt}" after training`);
      out(`  static files only: the page takes ?folder=<URL of a compiled folder>, ?ep=webgpu|wasm, ?steps=N, ?autorun=1`);
      await new Promise<void>((resolve) => {
        const stop = () => void server.close().then(resolve);
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });
}
