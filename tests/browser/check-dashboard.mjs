// Opens the dashboard in Debian's headless Chromium, waits until the page
// (rendered by its own JavaScript from the live event stream) shows a lock
// holder, an active worker and a session, and saves a screenshot.
//
//   node check-dashboard.mjs <dashboard URL> <screenshot.png> <holder> <active> <session id>
import { launch } from "./chromium.mjs";

const [url, shot, holder, active, session] = process.argv.slice(2);
if (!session) {
  console.error("usage: node check-dashboard.mjs <url> <screenshot.png> <holder> <active> <session id>");
  process.exit(2);
}
const { browser, close } = await launch("dashboard");
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(url);
  await page.locator("#conn.live").waitFor({ timeout: 15000 });
  await page.locator('[data-role="lock-holder"]', { hasText: holder }).waitFor({ timeout: 15000 });
  await page.locator('[data-role="ha-active"]', { hasText: active }).waitFor({ timeout: 15000 });
  await page.locator('[data-role="session"]', { hasText: session }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: shot, fullPage: true });
  console.log("dashboard ok");
} finally {
  await close();
}
