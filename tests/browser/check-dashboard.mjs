// Opens the dashboard in Debian's headless Chromium, waits until the page
// (rendered by its own JavaScript from the live event stream) shows a lock
// holder and an active worker, and saves a screenshot.
//
//   node check-dashboard.mjs <dashboard URL> <screenshot.png> <holder> <active>
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, shot, holder, active] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "dashboard-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(url);
  await page.locator("#conn.live").waitFor({ timeout: 15000 });
  await page.locator('[data-role="lock-holder"]', { hasText: holder }).waitFor({ timeout: 15000 });
  await page.locator('[data-role="ha-active"]', { hasText: active }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: shot, fullPage: true });
  console.log("dashboard ok");
} finally {
  await browser.close();
}
