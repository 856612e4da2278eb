// The confirmation dialog (a <dialog> of index.html): keyboard-usable,
// Escape and "No" both decline, the safe choice has the focus.

const dialog = document.getElementById("confirm-dialog");
const form = document.getElementById("confirm-form");
const title = document.getElementById("confirm-title");
const text = document.getElementById("confirm-text");
const yes = document.getElementById("confirm-yes");
const no = document.getElementById("confirm-no");

/** Ask a yes/no question; resolves true only for an explicit yes. */
export function confirmAction({ heading, message, yesLabel, noLabel }) {
  return new Promise((resolve) => {
    title.textContent = heading;
    text.textContent = message;
    yes.textContent = yesLabel;
    no.textContent = noLabel;
    let answer = false;
    const onSubmit = (event) => {
      event.preventDefault();
      answer = true;
      dialog.close();
    };
    const onNo = () => dialog.close();
    const onClose = () => {
      form.removeEventListener("submit", onSubmit);
      no.removeEventListener("click", onNo);
      dialog.removeEventListener("close", onClose);
      resolve(answer);
    };
    form.addEventListener("submit", onSubmit);
    no.addEventListener("click", onNo);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    no.focus();
  });
}
