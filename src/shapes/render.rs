//! Drawing scenes as small "real photos": anti-aliased shapes on a light, softly shaded and
//! slightly noisy background, with jitter in position, size, rotation and shade.
//!
//! Why not flat pixel-art: the captioners' encoders were trained on photographs, and a
//! perfectly flat image with jaggy edges is far from anything they have seen; light texture
//! and smooth edges keep the shapes world close enough to photos without hiding the shapes.
//! Placement makes every caption visibly true: "on the left" puts the centre in the left third,
//! "a left of b" puts the shapes side by side on one line with a gap, never overlapping.

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::Rng;

use super::{Colour, Object, Position, Relation, Scene, Shape, Size};
use crate::input_err;

/// The smallest and largest image sides the renderer accepts.
pub const MIN_SIZE: u32 = 16;
pub const MAX_SIZE: u32 = 2048;

/// Subsamples per pixel along each axis (so 16 per pixel) for anti-aliasing.
const SUPERSAMPLE: usize = 4;
/// Space kept free along the image border, as a fraction of the side.
const MARGIN: f64 = 0.04;

/// Checks an image side against [`MIN_SIZE`] and [`MAX_SIZE`] (an input error otherwise).
pub fn check_size(size: u32) -> anyhow::Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(input_err!(
            "image size {size} px is out of range: expected {MIN_SIZE} to {MAX_SIZE}"
        ));
    }
    Ok(())
}

/// Draws `scene` as a `size` x `size` image; unspecified attributes are drawn from `rng` first.
pub fn render<R: Rng + ?Sized>(scene: &Scene, size: u32, rng: &mut R) -> RgbImage {
    render_scene(scene, size, rng).1
}

/// [`render`], also returning the concrete scene that was drawn.
pub fn render_scene<R: Rng + ?Sized>(scene: &Scene, size: u32, rng: &mut R) -> (Scene, RgbImage) {
    let drawn = scene.resolve(rng);
    let placed = layout(&drawn, rng);
    let image = paint(&placed, size, rng);
    (drawn, image)
}

/// A shape placed on the unit square (x to the right, y down; lengths are fractions of the
/// side). Every point of the shape lies within `BOUND * r` of the centre.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub shape: Shape,
    pub cx: f64,
    pub cy: f64,
    pub r: f64,
    pub angle: f64,
    pub rgb: [f64; 3],
}

/// How far (in units of `r`) the farthest point of any shape reaches from its centre.
pub(crate) const BOUND: f64 = 1.06;

fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn radius<R: Rng + ?Sized>(size: Size, rng: &mut R) -> f64 {
    match size {
        Size::Big => uniform(rng, 0.17, 0.20),
        Size::Small => uniform(rng, 0.095, 0.115),
    }
}

/// The shape, colour and size of a resolved object.
fn parts(o: &Object) -> (Shape, Colour, Size) {
    (
        o.shape,
        o.colour.unwrap_or(Colour::Red),
        o.size.unwrap_or(Size::Big),
    )
}

/// Where each shape of a scene goes, with its size, rotation and shade.
pub(crate) fn layout<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> Vec<Placed> {
    let scene = scene.resolve(rng);
    let mut placed = Vec::with_capacity(2);
    match scene {
        Scene::One { object, position } => {
            let (shape, colour, size) = parts(&object);
            let r = radius(size, rng);
            let near = r + MARGIN;
            let (a, b) = (rng.random::<f64>(), rng.random::<f64>());
            // The centre lies in the outer third on the named side, roughly centred across.
            let side = near + (near.max(0.32) - near) * a;
            let across = 0.4 + 0.2 * b;
            let (cx, cy) = match position.unwrap_or(Position::Middle) {
                Position::Left => (side, across),
                Position::Right => (1.0 - side, across),
                Position::Top => (across, side),
                Position::Bottom => (across, 1.0 - side),
                Position::Middle => (0.45 + 0.1 * a, 0.45 + 0.1 * b),
            };
            placed.push(dress(shape, colour, cx, cy, r, rng));
        }
        Scene::Two {
            first,
            relation,
            second,
        } => {
            let (s1, c1, z1) = parts(&first);
            let (s2, c2, z2) = parts(&second);
            let (r1, r2) = (radius(z1, rng), radius(z2, rng));
            let relation = relation.unwrap_or(Relation::LeftOf);
            // `lead` is the shape on the left (or at the top).
            let first_leads = matches!(
                relation,
                Relation::LeftOf | Relation::Above | Relation::NextTo
            );
            let (lead_r, tail_r) = if first_leads { (r1, r2) } else { (r2, r1) };
            let gap = uniform(rng, 0.06, 0.12);
            let free = (1.0 - 2.0 * MARGIN - 2.0 * (lead_r + tail_r) - gap).max(0.0);
            let start = MARGIN + uniform(rng, 0.0, free);
            let lead_along = start + lead_r;
            let tail_along = lead_along + lead_r + gap + tail_r;
            let line = uniform(rng, 0.42, 0.58);
            let across = |r: f64, rng: &mut R| {
                (line + uniform(rng, -0.04, 0.04)).clamp(r + MARGIN, 1.0 - r - MARGIN)
            };
            let lead_across = across(lead_r, rng);
            let tail_across = across(tail_r, rng);
            let (along1, across1, along2, across2) = if first_leads {
                (lead_along, lead_across, tail_along, tail_across)
            } else {
                (tail_along, tail_across, lead_along, lead_across)
            };
            let xy = |along: f64, across: f64| {
                if relation.is_horizontal() {
                    (along, across)
                } else {
                    (across, along)
                }
            };
            let (x1, y1) = xy(along1, across1);
            let (x2, y2) = xy(along2, across2);
            placed.push(dress(s1, c1, x1, y1, r1, rng));
            placed.push(dress(s2, c2, x2, y2, r2, rng));
        }
    }
    placed
}

/// Adds rotation and shade jitter to a placed shape.
fn dress<R: Rng + ?Sized>(
    shape: Shape,
    colour: Colour,
    cx: f64,
    cy: f64,
    r: f64,
    rng: &mut R,
) -> Placed {
    let angle = uniform(rng, -0.15, 0.15);
    let shade = uniform(rng, 0.88, 1.08);
    let base = colour.rgb();
    let mut rgb = [0.0; 3];
    for (out, b) in rgb.iter_mut().zip(base) {
        *out = (b as f64 * shade + uniform(rng, -12.0, 12.0)).clamp(0.0, 255.0);
    }
    Placed {
        shape,
        cx,
        cy,
        r,
        angle,
        rgb,
    }
}

/// Outline points of a shape of radius 1 centred at 0 (y down), before rotation.
fn outline(shape: Shape) -> Vec<(f64, f64)> {
    match shape {
        Shape::Circle => Vec::new(),
        Shape::Square => vec![(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)],
        Shape::Diamond => vec![(0.0, -1.0), (0.76, 0.0), (0.0, 1.0), (-0.76, 0.0)],
        Shape::Triangle => vec![(0.0, -0.88), (0.86, 0.62), (-0.86, 0.62)],
        Shape::Star => (0..10)
            .map(|k| {
                let a = -std::f64::consts::FRAC_PI_2 + k as f64 * std::f64::consts::PI / 5.0;
                let rad = if k % 2 == 0 { 1.0 } else { 0.48 };
                (rad * a.cos(), rad * a.sin())
            })
            .collect(),
    }
}

/// Even-odd rule: whether (x, y) is inside the polygon.
fn in_polygon(poly: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Paints the background and the placed shapes at `size` px, supersampled.
fn paint<R: Rng + ?Sized>(placed: &[Placed], size: u32, rng: &mut R) -> RgbImage {
    let n = size as usize;
    let s = size as f64;
    // Background: a light neutral tone with a slight tint, a soft linear gradient in a random
    // direction and faint per-pixel noise.
    let level = uniform(rng, 222.0, 246.0);
    let tint: [f64; 3] = std::array::from_fn(|_| uniform(rng, -6.0, 6.0));
    let amplitude = uniform(rng, 0.0, 16.0);
    let direction = uniform(rng, 0.0, std::f64::consts::TAU);
    let (dc, ds) = (direction.cos(), direction.sin());
    let mut buf = vec![0f64; n * n * 3];
    for y in 0..n {
        for x in 0..n {
            let t = ((x as f64 + 0.5) / s - 0.5) * dc + ((y as f64 + 0.5) / s - 0.5) * ds;
            let noise = uniform(rng, -3.0, 3.0);
            for c in 0..3 {
                buf[(y * n + x) * 3 + c] = level + tint[c] + amplitude * t + noise;
            }
        }
    }
    for p in placed {
        let (cx, cy, r) = (p.cx * s, p.cy * s, p.r * s);
        let (sin, cos) = p.angle.sin_cos();
        let poly: Vec<(f64, f64)> = outline(p.shape)
            .into_iter()
            .map(|(u, v)| (cx + r * (u * cos - v * sin), cy + r * (u * sin + v * cos)))
            .collect();
        let circle_r2 = (0.92 * r) * (0.92 * r);
        let inside = |x: f64, y: f64| {
            if poly.is_empty() {
                (x - cx).powi(2) + (y - cy).powi(2) <= circle_r2
            } else {
                in_polygon(&poly, x, y)
            }
        };
        let reach = BOUND * r + 1.0;
        let lo = |c: f64| ((c - reach).floor().max(0.0) as usize).min(n);
        let hi = |c: f64| ((c + reach).ceil().max(0.0) as usize).min(n);
        for y in lo(cy)..hi(cy) {
            for x in lo(cx)..hi(cx) {
                let mut hits = 0usize;
                for i in 0..SUPERSAMPLE {
                    for j in 0..SUPERSAMPLE {
                        let sx = x as f64 + (j as f64 + 0.5) / SUPERSAMPLE as f64;
                        let sy = y as f64 + (i as f64 + 0.5) / SUPERSAMPLE as f64;
                        hits += usize::from(inside(sx, sy));
                    }
                }
                if hits == 0 {
                    continue;
                }
                let cover = hits as f64 / (SUPERSAMPLE * SUPERSAMPLE) as f64;
                // Lit from above: a little lighter at the top of the shape, darker at the bottom.
                let light = 1.0 + 0.08 * (cy - (y as f64 + 0.5)) / r.max(1.0);
                for c in 0..3 {
                    let v = &mut buf[(y * n + x) * 3 + c];
                    *v = *v * (1.0 - cover) + (p.rgb[c] * light).clamp(0.0, 255.0) * cover;
                }
            }
        }
    }
    let mut img = RgbImage::new(size, size);
    for (i, px) in img.pixels_mut().enumerate() {
        let v = |c: usize| buf[i * 3 + c].round().clamp(0.0, 255.0) as u8;
        *px = Rgb([v(0), v(1), v(2)]);
    }
    img
}

/// Encodes an image in the format its file name's extension names: PNG, or JPEG (quality 95).
pub fn encode(img: &RgbImage, path: &Path) -> anyhow::Result<Vec<u8>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let mut bytes = Vec::new();
    match ext.as_deref() {
        Some("png") => img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes))?,
        Some("jpg" | "jpeg") => img.write_with_encoder(
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95),
        )?,
        _ => {
            return Err(input_err!(
                "{}: unknown image format: expected a file name ending in .png, .jpg or .jpeg",
                path.display()
            ))
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::parse;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn draw(phrase: &str, seed: u64, size: u32) -> RgbImage {
        let scene = parse(phrase).unwrap();
        render(&scene, size, &mut ChaCha8Rng::seed_from_u64(seed))
    }

    /// Centroid (x, y) of the pixels `keep` selects, in pixels.
    fn centroid(img: &RgbImage, keep: impl Fn([u8; 3]) -> bool) -> (f64, f64) {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for (x, y, p) in img.enumerate_pixels() {
            if keep(p.0) {
                sx += x as f64;
                sy += y as f64;
                n += 1.0;
            }
        }
        assert!(n > 10.0, "too few pixels ({n})");
        (sx / n, sy / n)
    }

    fn red([r, g, b]: [u8; 3]) -> bool {
        r > 140 && g < 100 && b < 100
    }

    fn blue([r, g, b]: [u8; 3]) -> bool {
        b > 140 && r < 100 && g < 140
    }

    fn not_background([r, g, b]: [u8; 3]) -> bool {
        r.min(g).min(b) < 150
    }

    #[test]
    fn relations_hold_in_the_pixels() {
        for seed in 0..20 {
            for size in [48, 64] {
                let at = |rel: &str| {
                    let img = draw(&format!("a red circle {rel} a blue square"), seed, size);
                    (centroid(&img, red), centroid(&img, blue))
                };
                let gap = size as f64 * 0.15;
                let ((rx, _), (bx, _)) = at("left of");
                assert!(rx + gap < bx, "left of: {rx} vs {bx} (seed {seed})");
                let ((rx, _), (bx, _)) = at("to the right of");
                assert!(rx > bx + gap, "right of: {rx} vs {bx} (seed {seed})");
                let ((_, ry), (_, by)) = at("above");
                assert!(ry + gap < by, "above: {ry} vs {by} (seed {seed})");
                let ((_, ry), (_, by)) = at("below");
                assert!(ry > by + gap, "below: {ry} vs {by} (seed {seed})");
                let ((rx, ry), (bx, by)) = at("next to");
                assert!((rx - bx).abs() > gap && (ry - by).abs() < gap, "next to");
            }
        }
    }

    #[test]
    fn positions_hold_in_the_pixels() {
        for seed in 0..20 {
            for size in ["small", "big"] {
                let at = |pos: &str| {
                    centroid(
                        &draw(&format!("a {size} black star {pos}"), seed, 64),
                        not_background,
                    )
                };
                assert!(at("on the left").0 < 64.0 * 0.36);
                assert!(at("on the right").0 > 64.0 * 0.64);
                assert!(at("at the top").1 < 64.0 * 0.36);
                assert!(at("at the bottom").1 > 64.0 * 0.64);
                let (x, y) = at("in the middle");
                assert!((x - 32.0).abs() < 5.0 && (y - 32.0).abs() < 5.0, "{x} {y}");
            }
        }
    }

    #[test]
    fn layouts_stay_inside_never_overlap_and_sizes_differ() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..3000 {
            let scene = Scene::random(&mut rng);
            let placed = layout(&scene, &mut rng);
            for p in &placed {
                let reach = BOUND * p.r;
                assert!(p.cx - reach >= 0.0 && p.cx + reach <= 1.0, "{p:?}");
                assert!(p.cy - reach >= 0.0 && p.cy + reach <= 1.0, "{p:?}");
            }
            if let [a, b] = placed[..] {
                let d = ((a.cx - b.cx).powi(2) + (a.cy - b.cy).powi(2)).sqrt();
                assert!(d > BOUND * (a.r + b.r) + 0.03, "{scene:?} {placed:?}");
            }
            let sizes: Vec<Size> = match scene {
                Scene::One { object, .. } => vec![object.size.unwrap()],
                Scene::Two { first, second, .. } => vec![first.size.unwrap(), second.size.unwrap()],
            };
            for (p, s) in placed.iter().zip(sizes) {
                match s {
                    Size::Big => assert!(p.r >= 0.17),
                    Size::Small => assert!(p.r <= 0.115),
                }
            }
        }
    }

    #[test]
    fn same_seed_same_pixels_other_seed_other_pixels() {
        let phrase = "a big orange triangle";
        assert_eq!(draw(phrase, 5, 64), draw(phrase, 5, 64));
        assert_ne!(draw(phrase, 5, 64), draw(phrase, 6, 64));
    }

    #[test]
    fn edges_are_anti_aliased() {
        // A small flat-coloured circle: some pixels are partly covered, i.e. blends of the shape
        // and the background, not within noise of either.
        let img = draw("a big black circle in the middle", 1, 64);
        let partial = img.pixels().filter(|p| (70..180).contains(&p.0[0])).count();
        assert!(partial > 20, "{partial} partly covered pixels");
    }

    #[test]
    fn encodes_by_extension() {
        let img = draw("a star", 0, 32);
        let png = encode(&img, Path::new("x.PNG")).unwrap();
        assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8(), img);
        let jpg = encode(&img, Path::new("x.jpeg")).unwrap();
        assert_eq!(&jpg[..2], &[0xff, 0xd8]);
        let e = encode(&img, Path::new("x.gif")).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(e
            .to_string()
            .contains("expected a file name ending in .png"));
        assert!(check_size(8).is_err() && check_size(64).is_ok());
    }
}
