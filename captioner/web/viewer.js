// captioner's attention viewer, shared by the report (captioner caption --html) and the web page (captioner serve).
// A result is what `captioner serve` answers: {image, caption, words, attention: [[P values] per word], grid_size,
// score, candidates?: [{caption, words, attention, score}], top_class?, picture: data URL}.
// Pointing at a word (or focusing it) lights its attention on the picture; clicking pins it; Left / Right move
// between words, Escape unpins. The card's data-word attribute says which word's map is drawn ("" for none).
"use strict";

const captioner = (() => {
  const SIDE = 384; // the canvas's longer side, in pixels

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The heat of one map as a grid x grid RGBA image: red to yellow, opaque where the map is high.
  function heatCanvas(values, grid) {
    const top = Math.max(...values, 1e-12);
    const small = document.createElement("canvas");
    small.width = small.height = grid;
    const context = small.getContext("2d");
    const pixels = context.createImageData(grid, grid);
    values.forEach((value, i) => {
      const h = value / top;
      pixels.data.set([255, Math.round(255 * h), 0, Math.round(255 * 0.8 * h)], 4 * i);
    });
    context.putImageData(pixels, 0, 0);
    return small;
  }

  function card(result) {
    const figure = element("figure", "cap-card");
    figure.dataset.image = result.image;
    figure.dataset.word = "";
    const canvas = element("canvas", "cap-canvas");
    canvas.setAttribute("role", "img");
    figure.append(canvas);
    const text = element("figcaption");
    text.append(element("p", "cap-name", result.image));
    const sentence = element("p", "cap-caption");
    sentence.setAttribute("aria-live", "polite");
    text.append(sentence);
    if (result.top_class) {
      const top = result.top_class;
      text.append(element("p", "cap-top", `classifier: ${top.class} (${(100 * top.probability).toFixed(1)}%)`));
    }
    figure.append(text);

    const picture = new Image();
    const state = { words: result.words, attention: result.attention, pinned: null, shown: null };

    function draw() {
      if (!picture.complete || !picture.naturalWidth) return;
      const scale = SIDE / Math.max(picture.naturalWidth, picture.naturalHeight);
      canvas.width = Math.round(picture.naturalWidth * scale);
      canvas.height = Math.round(picture.naturalHeight * scale);
      const context = canvas.getContext("2d");
      context.drawImage(picture, 0, 0, canvas.width, canvas.height);
      const index = state.shown ?? state.pinned;
      figure.dataset.word = index === null ? "" : String(index);
      const label = index === null ? "" : `, attention of "${state.words[index]}"`;
      canvas.setAttribute("aria-label", `${result.image}${label}`);
      if (index === null) return;
      context.fillStyle = "rgba(0, 0, 0, 0.45)";
      context.fillRect(0, 0, canvas.width, canvas.height);
      context.imageSmoothingEnabled = true;
      context.imageSmoothingQuality = "high";
      context.drawImage(heatCanvas(state.attention[index], result.grid_size), 0, 0, canvas.width, canvas.height);
    }

    function show(index) {
      state.shown = index;
      sentence.querySelectorAll(".cap-word").forEach((button, i) => button.classList.toggle("cap-shown", i === index));
      draw();
    }

    function setCaption(words, attention) {
      state.words = words;
      state.attention = attention;
      state.pinned = state.shown = null;
      sentence.replaceChildren();
      words.forEach((word, i) => {
        const button = element("button", "cap-word", word);
        button.type = "button";
        button.setAttribute("aria-pressed", "false");
        button.addEventListener("mouseenter", () => show(i));
        button.addEventListener("mouseleave", () => show(null));
        button.addEventListener("focus", () => show(i));
        button.addEventListener("blur", () => show(null));
        button.addEventListener("click", () => {
          state.pinned = state.pinned === i ? null : i;
          sentence.querySelectorAll(".cap-word").forEach((b, j) => b.setAttribute("aria-pressed", String(j === state.pinned)));
          draw();
        });
        button.addEventListener("keydown", (event) => {
          const buttons = [...sentence.querySelectorAll(".cap-word")];
          if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
            const next = i + (event.key === "ArrowRight" ? 1 : -1);
            if (buttons[next]) buttons[next].focus();
            event.preventDefault();
          } else if (event.key === "Escape") {
            state.pinned = null;
            buttons.forEach((b) => b.setAttribute("aria-pressed", "false"));
            draw();
          }
        });
        sentence.append(button, " ");
      });
      draw();
    }

    // Two candidates may read the same (two token sequences, such as a class word and the same word spelled out,
    // or "a" and "an" before a class word): each text is listed once, with its best score, which comes first.
    const seen = new Set();
    const distinct = (result.candidates || []).filter((c) => !seen.has(c.caption) && seen.add(c.caption));
    const options = distinct.length > 1 ? distinct : null;
    if (options) {
      const list = element("ol", "cap-nbest");
      list.setAttribute("aria-label", "the n best captions");
      options.forEach((candidate, n) => {
        const item = element("li");
        const button = element("button", "cap-candidate", candidate.caption);
        button.type = "button";
        button.setAttribute("aria-pressed", String(n === 0));
        button.addEventListener("click", () => {
          list.querySelectorAll(".cap-candidate").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
          setCaption(candidate.words, candidate.attention);
        });
        item.append(button, element("span", "cap-score", candidate.score.toFixed(3)));
        list.append(item);
      });
      text.append(list);
    } else {
      text.append(element("p", "cap-score", `score ${result.score.toFixed(3)}`));
    }
    picture.addEventListener("load", draw);
    picture.src = result.picture;
    setCaption(result.words, result.attention);
    return figure;
  }

  return { card };
})();
