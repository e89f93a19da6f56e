/**
 * The Vulkan side of onnxruntime-node's WebGPU provider on Linux (Dawn over Vulkan). Dawn needs
 * the Vulkan loader (`libvulkan.so.1`) and at least one driver (ICD) that it accepts; without a
 * GPU, SwiftShader (shipped by Debian's `chromium` package, with its own copy of the loader)
 * works, Mesa lavapipe 22.3 is refused. This module says what is missing and, for tests and
 * CI, can switch a process to chromium's SwiftShader before the first WebGPU session.
 */
import * as fs from 'fs';
import * as path from 'path';

export const CHROMIUM_DIR = '/usr/lib/chromium';
export const SWIFTSHADER_ICD = path.join(CHROMIUM_DIR, 'vk_swiftshader_icd.json');
const CHROMIUM_LOADER = path.join(CHROMIUM_DIR, 'libvulkan.so.1');
const LOADER = 'libvulkan.so.1';
const SYSTEM_LIB_DIRS = [
  '/lib/x86_64-linux-gnu',
  '/usr/lib/x86_64-linux-gnu',
  '/lib/aarch64-linux-gnu',
  '/usr/lib/aarch64-linux-gnu',
  '/lib64',
  '/usr/lib64',
  '/lib',
  '/usr/lib',
  '/usr/local/lib',
];
const ICD_DIRS = ['/etc/vulkan/icd.d', '/usr/share/vulkan/icd.d', '/usr/local/share/vulkan/icd.d'];
// glibc's dlopen flags: RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE (the last is not in os.constants).
const PRELOAD_FLAGS = 0x2 | 0x100 | 0x1000;

/** Where the dynamic linker would find the Vulkan loader (LD_LIBRARY_PATH, then system dirs). */
export function findVulkanLoader(): string | undefined {
  const dirs = [...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean), ...SYSTEM_LIB_DIRS];
  return dirs.map((d) => path.join(d, LOADER)).find((f) => fs.existsSync(f));
}

/** The ICD manifests the loader would read (VK_ICD_FILENAMES / VK_DRIVER_FILES, else the icd.d dirs). */
export function vulkanDrivers(): string[] {
  const explicit = process.env.VK_DRIVER_FILES ?? process.env.VK_ICD_FILENAMES;
  if (explicit) return explicit.split(':').filter((f) => f && fs.existsSync(f));
  return ICD_DIRS.flatMap((d) =>
    fs.existsSync(d)
      ? fs
          .readdirSync(d)
          .filter((f) => f.endsWith('.json'))
          .map((f) => path.join(d, f))
      : [],
  );
}

/**
 * One line for "the WebGPU provider found no adapter": what is missing on this machine and how to
 * get it.
 */
export function noAdapterMessage(): string {
  const fixes: string[] = [];
  if (process.platform === 'linux') {
    if (!findVulkanLoader()) {
      fixes.push(
        fs.existsSync(CHROMIUM_LOADER)
          ? `the Vulkan loader ${LOADER} is not on the library path (apt-get install libvulkan1, or LD_LIBRARY_PATH=${CHROMIUM_DIR})`
          : `the Vulkan loader ${LOADER} is missing (apt-get install libvulkan1)`,
      );
    }
    const drivers = vulkanDrivers();
    const swiftshader = fs.existsSync(SWIFTSHADER_ICD)
      ? `set VK_ICD_FILENAMES=${SWIFTSHADER_ICD}`
      : 'Debian chromium ships one: apt-get install chromium, then set VK_ICD_FILENAMES=' + SWIFTSHADER_ICD;
    fixes.push(`${drivers.length ? `drivers tried: ${drivers.join(', ')}; ` : ''}install a GPU driver or SwiftShader (${swiftshader})`);
  } else {
    fixes.push('install or update the GPU driver');
  }
  return `no Vulkan adapter: ${fixes.join('; ')}`;
}

export interface SoftwareVulkan {
  icd: string;
  /** The loader preloaded from chromium's folder, when the system has none. */
  preloadedLoader?: string;
}

/**
 * Points this process at chromium's SwiftShader (a CPU Vulkan driver) when it is installed:
 * sets VK_ICD_FILENAMES unless a driver list is set already, and preloads chromium's copy of the
 * Vulkan loader when the system has none. Call before the first WebGPU session. Returns undefined
 * when SwiftShader is not installed. For tests and CI; users with a GPU need none of this.
 */
export function useSoftwareVulkan(): SoftwareVulkan | undefined {
  if (process.platform !== 'linux' || !fs.existsSync(SWIFTSHADER_ICD)) return undefined;
  if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  const icd = process.env.VK_DRIVER_FILES ?? process.env.VK_ICD_FILENAMES!;
  if (findVulkanLoader() || !fs.existsSync(CHROMIUM_LOADER)) return { icd };
  try {
    // Not a Node addon, so this throws "did not self-register"; RTLD_NODELETE keeps it loaded, and
    // Dawn's dlopen("libvulkan.so.1") then finds it by soname.
    process.dlopen({ exports: {} }, CHROMIUM_LOADER, PRELOAD_FLAGS);
  } catch {
    /* expected */
  }
  return { icd, preloadedLoader: CHROMIUM_LOADER };
}

/** Whether the machine shows a GPU to Vulkan at all: a DRM render node or an NVIDIA device. */
export function hasGpuDevice(): boolean {
  const list = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir) : []);
  return list('/dev/dri').some((f) => f.startsWith('renderD')) || list('/dev').some((f) => /^nvidia\d+$/.test(f));
}

/**
 * Before the first WebGPU session on Linux: with no GPU device and no driver chosen by the user,
 * point the Vulkan loader at SwiftShader when it is installed (Mesa's lavapipe, which Debian
 * installs with it, is refused by Dawn). Returns a line saying so, or undefined when nothing changed.
 */
export function softwareVulkanIfNoGpu(): string | undefined {
  if (process.platform !== 'linux' || process.env.VK_ICD_FILENAMES || process.env.VK_DRIVER_FILES || hasGpuDevice()) return undefined;
  const sw = useSoftwareVulkan();
  return sw ? `no GPU device on this machine: WebGPU runs on SwiftShader (${sw.icd}), a CPU Vulkan driver, slowly` : undefined;
}
