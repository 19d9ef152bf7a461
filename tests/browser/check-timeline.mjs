// Opens the dashboard in Debian's headless Chromium and waits until its
// timeline (drawn by the page's own JavaScript from the live event stream)
// shows every expected event, then saves a screenshot.
//
//   node check-timeline.mjs <dashboard URL> <screenshot.png> <event:who>...
//
// Each expectation is `event:who`, matched against the drawn elements'
// data-event and data-who: `term:ha2`, `fenced:b1`, `grant:acct-1`,
// `config:b2`, `config:b2#4294967321` (that instance applied that config
// version), `session:0x1000…`; `who` may be `*` (any), as in
// `latency:*`. Only the text up to the first `:` is the event, so a `who`
// may itself contain colons. Waits up to 30 s for all of them; prints
// `timeline ok` and exits 0, else prints what was never drawn and exits 1.
// Usable by any test that drives a drill: it knows nothing of this one.
import { launch } from "./chromium.mjs";

const [url, shot, ...expect] = process.argv.slice(2);
const parsed = expect.map((x) => {
  const at = x.indexOf(":");
  return at > 0 ? { text: x, event: x.slice(0, at), who: x.slice(at + 1) } : null;
});
if (!shot || expect.length === 0 || parsed.some((p) => !p || !p.who)) {
  console.error("usage: node check-timeline.mjs <url> <screenshot.png> <event:who>... (who may be *)");
  process.exit(2);
}
const WAIT_MS = 30000;

const { browser, close } = await launch("timeline");
let missing = parsed;
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  await page.setViewportSize({ width: 1400, height: 1000 });
  await page.goto(url);
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    // Asked of the page itself: what is drawn now, as (event, who) pairs.
    const drawn = await page.evaluate(() =>
      [...document.querySelectorAll("#timeline [data-event], #latency [data-event]")]
        .map((e) => [e.dataset.event, e.dataset.who, e.dataset.version]));
    // `who#version` also asks for the version a config mark carries.
    const matches = (p, [ev, who, version]) => {
      const [w, v] = p.who.split("#");
      return ev === p.event && (w === "*" || who === w) && (v === undefined || version === v);
    };
    missing = parsed.filter((p) => !drawn.some((d) => matches(p, d)));
    if (missing.length === 0 || Date.now() > deadline) break;
    await page.waitForTimeout(250);
  }
  // One more redraw tick, so the shot shows the page as a person sees it.
  await page.waitForTimeout(1100);
  await page.screenshot({ path: shot, fullPage: true });
  if (missing.length === 0) {
    console.log("timeline ok");
  } else {
    console.log("timeline: never drawn within " + WAIT_MS / 1000 + " s: " + missing.map((p) => p.text).join(" "));
    const drawn = await page.evaluate(() =>
      [...document.querySelectorAll("[data-event]")].map((e) => e.dataset.event + ":" + e.dataset.who));
    console.log("drawn: " + [...new Set(drawn)].join(" "));
  }
} finally {
  await close();
}
process.exit(missing.length === 0 ? 0 : 1);
