/* notifier signup form, progressive enhancement: works as a plain <form> without this script.
 * With it, <form data-notifier-form> submits with fetch() and shows success or field errors
 * inline, and an <input data-notifier-suggest> becomes a condition combobox (WAI-ARIA 1.2
 * combobox with a listbox: arrows move, Enter picks, Escape closes) fed by GET /v1/conditions;
 * picking a suggestion fills the form's mesh_id, editing the text clears it. No framework, no
 * build step. */
(function () {
  "use strict";

  var ERROR_STYLE = "display:block;margin:.3rem 0;color:#b00020;font-weight:600;";
  var NAMES = { email: "Email address", study: "Study", condition: "Condition",
    frequency: "How often", timezone: "Time zone" };

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

  function sentence(text) {
    text = String(text || "");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function clearErrors(form) {
    var old = form.querySelectorAll("[data-notifier-error], [data-notifier-summary]");
    for (var i = 0; i < old.length; i++) old[i].parentNode.removeChild(old[i]);
    var invalid = form.querySelectorAll("[aria-invalid]");
    for (var j = 0; j < invalid.length; j++) {
      var field = invalid[j];
      field.removeAttribute("aria-invalid");
      field.style.outline = "";
      var ids = (field.getAttribute("aria-describedby") || "").split(" ").filter(function (id) {
        return id && id.indexOf("notifier-error-") !== 0;
      });
      if (ids.length) field.setAttribute("aria-describedby", ids.join(" "));
      else field.removeAttribute("aria-describedby");
    }
  }

  // A visible field the person can fix, or null (hidden fields are the site's, not theirs).
  function visibleField(form, name) {
    var field = form.querySelector('[name="' + name + '"]');
    if (!field || field.type === "hidden" || field.closest("[hidden]")) return null;
    return field;
  }

  // Errors tied to their fields: the message on its own line above the field (never glued to
  // it), aria-invalid and aria-describedby on it, and a summary that links to each; the focus
  // moves to the summary so a screen reader reads it at once.
  function showErrors(form, fields) {
    var summary = document.createElement("div");
    summary.setAttribute("data-notifier-summary", "");
    summary.setAttribute("role", "alert");
    summary.setAttribute("tabindex", "-1");
    summary.setAttribute("style", "border:3px solid #b00020;padding:.5rem .8rem;margin:0 0 1rem;");
    var title = document.createElement("p");
    title.setAttribute("style", "margin:0 0 .3rem;font-weight:700;");
    title.textContent = "There is a problem";
    var list = document.createElement("ul");
    list.setAttribute("style", "margin:0;");
    summary.appendChild(title);
    summary.appendChild(list);
    for (var name in fields) {
      var text = sentence(fields[name]);
      var field = visibleField(form, name);
      var item = document.createElement("li");
      if (field) {
        var note = document.createElement("p");
        note.id = "notifier-error-" + name;
        note.setAttribute("data-notifier-error", name);
        note.setAttribute("style", ERROR_STYLE);
        note.textContent = text;
        field.parentNode.insertBefore(note, field);
        field.setAttribute("aria-invalid", "true");
        var described = field.getAttribute("aria-describedby");
        field.setAttribute("aria-describedby", (described ? described + " " : "") + note.id);
        field.style.outline = "3px solid #b00020";
        if (!field.id) field.id = "notifier-field-" + name;
        var link = document.createElement("a");
        link.href = "#" + field.id;
        link.textContent = text;
        link.addEventListener("click", (function (target) {
          return function (event) { event.preventDefault(); target.focus(); };
        })(field));
        item.appendChild(link);
      } else {
        item.textContent = (NAMES[name] || name) + ": " + text;
      }
      list.appendChild(item);
    }
    form.insertBefore(summary, form.firstChild);
    summary.focus();
  }

  // The form gives way to a visible "check your inbox" panel, which takes the focus.
  function showSuccess(form, email) {
    var panel = document.createElement("div");
    panel.setAttribute("data-notifier-success", "");
    panel.setAttribute("role", "status");
    panel.setAttribute("tabindex", "-1");
    panel.setAttribute("style", "border-left:5px solid #1a7f37;background:#eef7f0;padding:.8rem 1rem;margin:1rem 0;");
    var title = document.createElement("p");
    title.setAttribute("style", "margin:0 0 .4rem;font-size:1.2rem;font-weight:700;");
    title.textContent = "Check your inbox";
    var text = document.createElement("p");
    text.setAttribute("style", "margin:0;");
    text.textContent = form.getAttribute("data-success") ||
      "Almost done: we sent a link to " + email + ". Open it and press “Confirm” to start " +
      "your alerts. Nothing is sent until you confirm; look in your spam folder if it has " +
      "not arrived in a few minutes.";
    panel.appendChild(title);
    panel.appendChild(text);
    form.parentNode.insertBefore(panel, form.nextSibling);
    form.hidden = true;
    panel.focus();
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
            box.textContent = "";
            var email = form.querySelector('[name="email"]');
            showSuccess(form, email ? email.value : "your address");
            form.reset();
          } else if (result.status === 422 && result.body.fields) {
            box.textContent = "";
            showErrors(form, result.body.fields);
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

  function suggestions(form, input) {
    var url = form.action.replace(/\/v1\/subscriptions(\?.*)?$/, "/v1/conditions");
    var mesh = form.querySelector('input[name="mesh_id"]');
    if (!mesh) {
      mesh = document.createElement("input");
      mesh.type = "hidden";
      mesh.name = "mesh_id";
      form.appendChild(mesh);
    }
    var list = document.createElement("ul");
    list.id = input.id + "-suggestions";
    list.setAttribute("role", "listbox");
    list.setAttribute("aria-label", "Suggested conditions");
    list.className = "notifier-suggestions";
    list.hidden = true;
    input.parentNode.insertBefore(list, input.nextSibling);
    input.setAttribute("role", "combobox");
    input.setAttribute("aria-autocomplete", "list");
    input.setAttribute("aria-expanded", "false");
    input.setAttribute("aria-controls", list.id);
    input.setAttribute("autocomplete", "off");
    var items = [], active = -1, timer = null, asked = "";

    function close() {
      list.hidden = true;
      input.setAttribute("aria-expanded", "false");
      input.removeAttribute("aria-activedescendant");
      active = -1;
    }
    function highlight(index) {
      var options = list.children;
      for (var i = 0; i < options.length; i++) {
        options[i].setAttribute("aria-selected", i === index ? "true" : "false");
      }
      active = index;
      if (index >= 0) input.setAttribute("aria-activedescendant", options[index].id);
      else input.removeAttribute("aria-activedescendant");
    }
    function pick(index) {
      var item = items[index];
      if (!item) return;
      input.value = item.label;
      mesh.value = item.mesh_id;
      close();
    }
    function show(found) {
      items = found;
      list.textContent = "";
      for (var i = 0; i < found.length; i++) {
        var option = document.createElement("li");
        option.id = list.id + "-" + i;
        option.setAttribute("role", "option");
        option.setAttribute("aria-selected", "false");
        option.textContent = found[i].label;
        option.addEventListener("mousedown", (function (index) {
          return function (event) { event.preventDefault(); pick(index); };
        })(i));
        list.appendChild(option);
      }
      list.hidden = !found.length;
      input.setAttribute("aria-expanded", found.length ? "true" : "false");
      active = -1;
    }
    function ask(first) {
      var q = input.value.trim();
      if (q.length < 2) { close(); return; }
      asked = q;
      fetch(url + "?q=" + encodeURIComponent(q.slice(0, 100)) + "&limit=8", {
        headers: { "Accept": "application/json" }, credentials: "omit",
      })
        .then(function (response) { return response.ok ? response.json() : { conditions: [] }; })
        .then(function (body) {
          if (asked !== q) return;
          show(body.conditions || []);
          if (first && items.length) highlight(0); // ArrowDown on a closed list: open, go to 1st
        })
        .catch(function () { close(); });
    }
    input.addEventListener("input", function () {
      mesh.value = ""; // typed text: resolved by the service unless a suggestion is picked
      clearTimeout(timer);
      timer = setTimeout(ask, 150);
    });
    input.addEventListener("keydown", function (event) {
      var open = !list.hidden && items.length;
      if (event.key === "ArrowDown") {
        if (!open) { event.preventDefault(); ask(true); return; }
        event.preventDefault();
        highlight((active + 1) % items.length);
      } else if (event.key === "ArrowUp" && open) {
        event.preventDefault();
        highlight(active <= 0 ? items.length - 1 : active - 1);
      } else if (event.key === "Enter" && open && active >= 0) {
        event.preventDefault(); // pick, do not submit yet
        pick(active);
      } else if (event.key === "Escape" && open) {
        event.preventDefault();
        close();
      }
    });
    input.addEventListener("blur", close);
  }

  function init() {
    var forms = document.querySelectorAll("form[data-notifier-form]");
    for (var i = 0; i < forms.length; i++) {
      enhance(forms[i]);
      var input = forms[i].querySelector("input[data-notifier-suggest]");
      if (input && window.fetch) suggestions(forms[i], input);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
