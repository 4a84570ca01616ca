//! The shapes world's classes for class-conditional generators: one class per (shape, colour)
//! pair, 5 x 8 = 40. Class `shape_index * 8 + colour_index` in [`Shape::ALL`] / [`Colour::ALL`]
//! order, named "colour shape" ("red circle"). A scene's class vector is the multi-hot of its
//! shapes' pairs, so a two-shape scene is a mixture of two classes, as big-sleep mixes ImageNet
//! classes; sizes and positions are left to the latent noise.

use super::{Colour, Object, Scene, Shape};

/// Number of classes.
pub const NUM_CLASSES: usize = Shape::ALL.len() * Colour::ALL.len();

/// The class index of a (shape, colour) pair.
pub fn class_index(shape: Shape, colour: Colour) -> usize {
    let s = Shape::ALL.iter().position(|&x| x == shape).unwrap_or(0);
    let c = Colour::ALL.iter().position(|&x| x == colour).unwrap_or(0);
    s * Colour::ALL.len() + c
}

/// The (shape, colour) pair of class `index`, or `None` past [`NUM_CLASSES`].
pub fn class_pair(index: usize) -> Option<(Shape, Colour)> {
    (index < NUM_CLASSES).then(|| {
        (
            Shape::ALL[index / Colour::ALL.len()],
            Colour::ALL[index % Colour::ALL.len()],
        )
    })
}

/// Every class name in index order ("red circle", "orange circle", ...).
pub fn class_names() -> Vec<String> {
    (0..NUM_CLASSES)
        .filter_map(class_pair)
        .map(|(s, c)| format!("{} {}", c.word(), s.word()))
        .collect()
}

/// The classes a scene shows: one per object whose colour is given (an object without a colour
/// belongs to no single class and is left out).
pub fn scene_classes(scene: &Scene) -> Vec<usize> {
    let objects: Vec<&Object> = match scene {
        Scene::One { object, .. } => vec![object],
        Scene::Two { first, second, .. } => vec![first, second],
    };
    let mut classes: Vec<usize> = objects
        .into_iter()
        .filter_map(|o| o.colour.map(|c| class_index(o.shape, c)))
        .collect();
    classes.sort_unstable();
    classes.dedup();
    classes
}

/// The multi-hot class vector of a scene ([`NUM_CLASSES`] wide, 1 for each of its classes).
pub fn multi_hot(scene: &Scene) -> Vec<f32> {
    let mut v = vec![0f32; NUM_CLASSES];
    for c in scene_classes(scene) {
        v[c] = 1.0;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::grammar::parse;

    #[test]
    fn indices_and_names_round_trip() {
        assert_eq!(NUM_CLASSES, 40);
        let names = class_names();
        assert_eq!(names.len(), 40);
        assert_eq!(names[0], "red circle");
        assert_eq!(names[39], "black diamond");
        for i in 0..NUM_CLASSES {
            let (s, c) = class_pair(i).unwrap();
            assert_eq!(class_index(s, c), i);
        }
        assert_eq!(class_pair(40), None);
    }

    #[test]
    fn scenes_are_multi_hot_over_their_coloured_shapes() {
        let one = parse("a big blue square on the left").unwrap();
        assert_eq!(
            scene_classes(&one),
            vec![class_index(Shape::Square, Colour::Blue)]
        );
        let two = parse("a red circle above a green star").unwrap();
        let v = multi_hot(&two);
        assert_eq!(v.iter().sum::<f32>(), 2.0);
        assert_eq!(v[class_index(Shape::Circle, Colour::Red)], 1.0);
        assert_eq!(v[class_index(Shape::Star, Colour::Green)], 1.0);
        let uncoloured = parse("a circle").unwrap();
        assert!(scene_classes(&uncoloured).is_empty());
    }
}
