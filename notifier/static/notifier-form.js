/* notifier signup form, progressive enhancement: works as a plain <form> without this script.
 * With it, <form data-notifier-form> submits with fetch() and shows success or field errors
 * inline. No framework, no build step. */
(function () {
  "use strict";

  function messageBox(form) {
    var box = form.querySelector("[data-notifier-message]");
    if (!box) {
      box = document.createElement("p");
      box.setAttribute("data-notifier-message", "");
      box.setAttribute("role", "status");
      box.setAttribute("aria-live", "polite");
      form.appendChild(box);
    }
    return box;
  }

  function clearErrors(form) {
    var old = form.querySelectorAll("[data-notifier-error]");
    for (var i = 0; i < old.length; i++) old[i].parentNode.removeChild(old[i]);
    var invalid = form.querySelectorAll("[aria-invalid]");
    for (var j = 0; j < invalid.length; j++) invalid[j].removeAttribute("aria-invalid");
  }

  function showFieldError(form, name, text) {
    var field = form.querySelector('[name="' + name + '"]');
    var note = document.createElement("span");
    note.setAttribute("data-notifier-error", name);
    note.className = "notifier-error";
    note.textContent = text;
    if (field) {
      field.setAttribute("aria-invalid", "true");
      note.id = "notifier-error-" + name;
      field.setAttribute("aria-describedby", note.id);
      field.parentNode.insertBefore(note, field.nextSibling);
    } else {
      messageBox(form).appendChild(note);
    }
  }

  function payload(form) {
    var data = {};
    var elements = form.elements;
    for (var i = 0; i < elements.length; i++) {
      var el = elements[i];
      if (!el.name || el.disabled || el.type === "submit") continue;
      if ((el.type === "checkbox" || el.type === "radio") && !el.checked) continue;
      if (el.name === "redirect") continue; // JSON answers stay on the page
      // A box without a value (broad) means true; one with a value (a condition) sends it.
      data[el.name] = el.type === "checkbox" && !el.hasAttribute("value") ? true : el.value;
    }
    return data;
  }

  function enhance(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors(form);
      var box = messageBox(form);
      var button = form.querySelector('[type="submit"]');
      if (button) button.disabled = true;
      box.textContent = "Sending…";
      fetch(form.action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(payload(form)),
        credentials: "omit",
      })
        .then(function (response) {
          return response.json().then(
            function (body) { return { status: response.status, body: body }; },
            function () { return { status: response.status, body: {} }; }
          );
        })
        .then(function (result) {
          if (result.status === 202) {
            box.textContent = form.getAttribute("data-success") ||
              "Almost done: check your inbox and confirm the link we sent you.";
            form.reset();
          } else if (result.status === 422 && result.body.fields) {
            box.textContent = "Please check the highlighted fields.";
            for (var name in result.body.fields) showFieldError(form, name, result.body.fields[name]);
          } else if (result.status === 429) {
            box.textContent = "Too many requests: please try again in a minute.";
          } else {
            box.textContent = (result.body && result.body.error) || "Something went wrong, please try again.";
          }
        })
        .catch(function () { box.textContent = "Network error, please try again."; })
        .then(function () { if (button) button.disabled = false; });
    });
  }

  function init() {
    var forms = document.querySelectorAll("form[data-notifier-form]");
    for (var i = 0; i < forms.length; i++) enhance(forms[i]);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
