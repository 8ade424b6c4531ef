"""The search page of `imbed serve` in a real browser: Debian's Chromium, headless, driven by
selenium through chromium-driver (the driver's path is given, so nothing is downloaded).

Run by the Rust test `page::the_search_page_works_in_a_real_browser`, which indexes a temp
collection, starts the servers and passes their addresses. Each state of the page is written as a
screenshot to --out. Exits non-zero, naming the failed check, when the page does not do what it
should.
"""

import argparse
import base64
import json
import pathlib
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT_S = 60


class Page:
    def __init__(self, args):
        options = webdriver.ChromeOptions()
        options.binary_location = args.chromium
        for a in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ):
            options.add_argument(a)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(executable_path=args.driver)
        self.driver = webdriver.Chrome(service=service, options=options)
        self.out = pathlib.Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shots = []
        self.logs = []

    def quit(self):
        self.driver.quit()

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def find(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait(self, what, predicate):
        try:
            return WebDriverWait(self.driver, WAIT_S, poll_frequency=0.1).until(
                lambda _: predicate()
            )
        except TimeoutException:
            self.shot("failed-" + what.replace(" ", "-"))
            fail(f"timed out waiting for {what}; status line: {self.status()!r}")

    def shot(self, name):
        path = self.out / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path.name)

    def status(self):
        try:
            return self.find("#status").text
        except Exception:  # noqa: BLE001 - only for messages
            return "<no status line>"

    def collect_logs(self):
        try:
            self.logs.extend(self.driver.get_log("browser"))
        except Exception:  # noqa: BLE001 - older drivers have no log endpoint
            pass

    def hits(self):
        return self.js(
            """return Array.from(document.querySelectorAll('#results .hit')).map(h => ({
                 image: h.dataset.image,
                 name: h.querySelector('.name').textContent,
                 copies: (h.querySelector('.copies') || {}).textContent || '',
                 alt: h.querySelector('img.thumb').alt,
                 loaded: h.querySelector('img.thumb').classList.contains('loaded')
                   && h.querySelector('img.thumb').naturalWidth > 0,
                 missing: h.querySelector('img.thumb').classList.contains('missing'),
               }));"""
        )

    def results_settled(self):
        """Results are shown, none is loading, and every thumbnail has arrived or failed."""
        if self.find("#results").get_attribute("aria-busy") != "false":
            return False
        hits = self.hits()
        if not hits:
            return False
        return all(h["loaded"] or h["missing"] for h in hits)

    def wait_results(self, what):
        self.wait(what, self.results_settled)
        hits = self.hits()
        missing = [h["name"] for h in hits if not h["loaded"]]
        check(not missing, f"{what}: thumbnails did not load for {missing}")
        return hits

    def search_text(self, text):
        box = self.find("#q")
        box.clear()
        box.send_keys(text)
        self.js("document.getElementById('results').setAttribute('aria-busy', 'true')")
        box.send_keys(Keys.ENTER)

    def param(self, name):
        return self.js("return new URLSearchParams(location.search).get(arguments[0])", name)


def fail(message):
    print(f"page test failed: {message}", file=sys.stderr)
    raise SystemExit(1)


def check(ok, message):
    if not ok:
        fail(message)


def names(hits):
    return [h["name"] for h in hits]


def base(name):
    return name.rsplit("/", 1)[-1]


def run(args):
    page = Page(args)
    d = page.driver
    try:
        # The empty page, served with its security headers (checked in Rust); nothing loaded.
        d.get(args.open_url + "/")
        page.wait("the page script", lambda: page.status().startswith("Type words"))
        page.shot("empty")

        # A text query: Enter searches, results come with thumbnails and the status line says
        # what was searched.
        page.js("document.getElementById('k').value = '12'")
        page.search_text(args.text)
        hits = page.wait_results("text results")
        check(len(hits) == 12, f"k=12 shows 12 results, not {len(hits)}")
        top = names(hits)[: args.text_top]
        check(
            all(base(n).startswith(args.text) for n in top),
            f"the best {args.text_top} results of {args.text!r} are {args.text} images: {top}",
        )
        status = page.status()
        check(
            "vectors in space" in status and "exact" in status and " ms" in status,
            f"the status line names space, count, method and time: {status!r}",
        )
        check(page.param("q") == args.text, "the query is in the URL")
        copies = [h for h in hits if h["copies"]]
        check(copies, "an image stored twice is shown once, with its count")
        check(all(h["alt"] for h in hits), "every thumbnail has alt text")
        check(
            any("mostly" in h["alt"] for h in hits),
            "the cached description is the alt text",
        )
        page.shot("text-results")
        first_page = [h["image"] for h in hits]

        # Load more: the next page is appended and the URL remembers it.
        more = page.find("#more")
        check(more.is_displayed(), "a 'Load more' button when there are more results")
        more.click()
        page.wait("the second page", lambda: len(page.hits()) > 12 and page.results_settled())
        hits = page.wait_results("two pages")
        both_pages = [h["image"] for h in hits]
        check(both_pages[:12] == first_page, "load more keeps the first page in place")
        check(len(set(both_pages)) == len(both_pages), "no image is shown twice")
        check(page.param("pages") == "2", "the URL says two pages are shown")
        page.shot("load-more")

        # Reload: the URL brings back the same results.
        d.refresh()
        page.wait("results after a reload", lambda: len(page.hits()) == len(both_pages))
        hits = page.wait_results("reloaded results")
        check(
            [h["image"] for h in hits] == both_pages,
            "a reload shows the same results in the same order",
        )
        page.shot("reloaded")

        # More like this: the clicked image's neighbours, itself left out.
        liked = hits[0]
        page.js("document.getElementById('results').setAttribute('aria-busy', 'true')")
        page.find(f'#results .hit[data-image="{liked["image"]}"] button.like').click()
        page.wait("'more like this' results", lambda: page.param("mode") == "similar")
        hits = page.wait_results("similar results")
        check(
            liked["image"] not in [h["image"] for h in hits],
            "'more like this' leaves the image itself out",
        )
        colour = base(liked["name"]).split("-")[0]
        check(
            base(hits[0]["name"]).startswith(colour),
            f"the image most like a {colour} one is {colour}: {names(hits)[:3]}",
        )
        check(page.param("image") == liked["image"], "the URL names the image by content hash")
        page.shot("more-like-this")
        similar = [h["image"] for h in hits]
        d.refresh()
        page.wait("similar results after a reload", lambda: len(page.hits()) == len(similar))
        hits = page.wait_results("reloaded similar results")
        check([h["image"] for h in hits] == similar, "a reload shows the same neighbours")

        # An uploaded image: its near-duplicate in the collection comes first.
        page.js("document.getElementById('results').setAttribute('aria-busy', 'true')")
        page.find("#file").send_keys(str(pathlib.Path(args.upload).resolve()))
        page.wait("image results", lambda: page.param("mode") == "image" and page.results_settled())
        hits = page.wait_results("image results")
        check(
            hits[0]["name"] == args.upload_match,
            f"the near-duplicate {args.upload_match} comes first: {names(hits)[:3]}",
        )
        check(page.find("#query-image").is_displayed(), "the query image is shown")
        page.shot("upload")
        uploaded = [h["image"] for h in hits]
        d.refresh()
        page.wait("image results after a reload", lambda: len(page.hits()) == len(uploaded))
        hits = page.wait_results("reloaded image results")
        check([h["image"] for h in hits] == uploaded, "a reload shows the same image results")
        page.shot("upload-reloaded")

        # The same image dropped on the page, then pasted.
        data = base64.b64encode(pathlib.Path(args.upload).read_bytes()).decode()
        for event in ("drop", "paste"):
            page.js("document.getElementById('results').replaceChildren()")
            page.js(
                """const [b64, kind] = arguments;
                   const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                   const file = new File([bytes], 'query.jpg', { type: 'image/jpeg' });
                   const dt = new DataTransfer();
                   dt.items.add(file);
                   if (kind === 'drop') {
                     document.dispatchEvent(new DragEvent('dragenter', { dataTransfer: dt, bubbles: true, cancelable: true }));
                     document.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
                   } else {
                     document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
                   }""",
                data,
                event,
            )
            hits = page.wait_results(f"results of a {event}")
            check(
                hits[0]["name"] == args.upload_match,
                f"a {event}ped image finds {args.upload_match} first: {names(hits)[:3]}",
            )
            check(page.find("#drop").get_attribute("hidden") is not None, "the drop hint is gone")

        # A phone-sized screen: the grid reflows, nothing scrolls sideways.
        d.set_window_size(390, 844)
        page.search_text(args.text)
        page.wait_results("results on a phone")
        overflow = page.js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        check(overflow <= 0, f"nothing scrolls sideways on a phone ({overflow} px too wide)")
        columns = page.js(
            "return getComputedStyle(document.getElementById('results'))"
            ".gridTemplateColumns.split(' ').length"
        )
        check(columns == 2, f"two columns on a phone, not {columns}")
        page.shot("phone")
        d.set_window_size(1280, 900)

        # A query nothing can embed: an error state that says why, not a blank page.
        page.search_text("!!!")
        page.wait(
            "the error state",
            lambda: page.find("#results").get_attribute("aria-busy") == "false"
            and page.status().startswith("Error"),
        )
        check(not page.hits(), "no stale results under an error")
        page.shot("error")

        # A query embedded by a fallback step: results, and a banner pointing to imbed doctor.
        d.get(args.degraded_url + "/?q=" + args.text)
        hits = page.wait_results("results of a degraded query")
        banner = page.find("#banner")
        check(banner.is_displayed(), "a banner when the query fell back")
        check(
            "fallback" in banner.text and "imbed doctor" in banner.text,
            f"the banner says what happened and what to do: {banner.text!r}",
        )
        page.shot("degraded")

        # With API keys: the page asks once, then works; thumbnails are fetched with the key.
        d.get(args.keyed_url + "/")
        page.wait("the keyed page", lambda: page.status().startswith("Type words"))
        page.search_text(args.text)
        page.wait("the key prompt", lambda: page.find("#key-form").is_displayed())
        check(not page.hits(), "nothing of the collection is shown without the key")
        page.shot("key-asked")
        page.find("#key").send_keys("not-the-key")
        page.find("#key").send_keys(Keys.ENTER)
        page.wait(
            "the refusal",
            lambda: page.find("#key-form").is_displayed()
            and page.find("#key-error").is_displayed(),
        )
        page.find("#key").send_keys(args.key)
        page.find("#key").send_keys(Keys.ENTER)
        hits = page.wait_results("results with the key")
        check(not page.find("#key-form").is_displayed(), "the key form is gone")
        check(all(h["loaded"] for h in hits), "thumbnails load with the key")
        page.shot("key-works")
        d.refresh()
        hits = page.wait_results("keyed results after a reload")
        check(not page.find("#key-form").is_displayed(), "the key is asked once per session")

        page.collect_logs()
        csp = [e["message"] for e in page.logs if "Content Security Policy" in e["message"]]
        check(not csp, f"the page breaks none of its own CSP: {csp}")
    finally:
        page.collect_logs()
        page.quit()
    print(json.dumps({"screenshots": page.shots, "console": len(page.logs)}))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--open-url", required=True)
    p.add_argument("--keyed-url", required=True)
    p.add_argument("--degraded-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--text", required=True, help="a colour word the collection's names start with")
    p.add_argument("--text-top", type=int, default=3)
    p.add_argument("--upload", required=True, help="a near-duplicate of an indexed image")
    p.add_argument("--upload-match", required=True, help="the name of that indexed image")
    p.add_argument("--out", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--driver", default="/usr/bin/chromedriver")
    started = time.monotonic()
    run(p.parse_args())
    print(f"page test passed in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
