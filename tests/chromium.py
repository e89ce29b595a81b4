"""How the browser tests (tests/browser, tests/stack) start Debian's headless Chromium through Playwright,
which downloads no browser here: one place for the binary and its flags."""

CHROMIUM = "/usr/bin/chromium"
# no sandbox (root in a container), no GPU, and none of Chromium's own calls home: the page is alone
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def launch(playwright):
    """A headless Chromium browser from a started `sync_playwright()`."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
