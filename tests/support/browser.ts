/**
 * Headless Chromium (Debian's /usr/bin/chromium driven by playwright-core; never a downloaded
 * browser) and `hollowc web` servers for the tests that run the browser page. Without chromium
 * the callers skip, except under CI (env CI set), where launching fails: CI installs chromium.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import type { Browser, BrowserContext, Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
export const IN_CI = !!process.env.CI;
export const HAVE_CHROMIUM = fs.existsSync(CHROMIUM);
const COMMON_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
const WEBGPU_ARGS = [
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader',
  '--enable-unsafe-swiftshader',
];

/** Chromium with a fresh profile under `dir`; undefined (skip) without chromium outside CI. */
export async function launchChromium(
  backend: 'wasm' | 'webgpu',
  dir: string,
): Promise<{ browser: Browser; context: BrowserContext } | undefined> {
  if (!HAVE_CHROMIUM) {
    if (IN_CI) throw new Error(`${CHROMIUM} is missing under CI (.ci/run installs the chromium package)`);
    return undefined;
  }
  const { chromium } = await import('playwright-core');
  const profile = fs.mkdtempSync(path.join(dir, `profile-${backend}-`));
  const args = [...COMMON_ARGS, ...(backend === 'webgpu' ? WEBGPU_ARGS : ['--disable-gpu'])];
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    acceptDownloads: true,
    viewport: { width: 1100, height: 1000 },
  });
  return { browser: context.browser()!, context };
}

/** `hollowc web <out> ...args` as a user starts it (from source, any free port); resolves to its URL. The caller kills `servers` after. */
export async function startWebServer(out: string, args: string[], servers: ChildProcess[]): Promise<string> {
  const server = spawn(process.execPath, [path.join(__dirname, 'cli-child.js'), 'web', out, '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  servers.push(server);
  return new Promise<string>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`hollowc web printed no URL: ${text}`)), 60000);
    server.stdout!.on('data', (d) => {
      text += d;
      const m = /serving .* at (http:\/\/127\.0\.0\.1:\d+\/)/.exec(text);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    server.stderr!.on('data', (d) => (text += d));
    server.on('exit', (code) => reject(new Error(`hollowc web exited with ${code}: ${text}`)));
  });
}

/** The context's page, with every console error and page error it logs collected into `problems`. */
export async function watchedPage(context: BrowserContext): Promise<{ page: Page; problems: string[] }> {
  const page = context.pages()[0] ?? (await context.newPage());
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console.error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  return { page, problems };
}
